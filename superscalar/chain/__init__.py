"""Everything that follows the chain for every factory, block by block (follower.py): exits and their fee
bumps (exits.py, fee_schedule.py, conflicts.py, routing.py) and the HTLC watch (htlc_watch.py)."""
