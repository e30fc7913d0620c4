"""The client's side: joining a factory and watching its funding (membership.py), and what it agrees to
(policy.py)."""
