"""The Core Lightning shell: the plugin (plugin.py registers and translates, nothing more), lightningd's
RPC as the roles use it (node.py), the datastore (store.py), peer messages (transport.py), bitcoind as
lightningd reaches it, invoices, listings, and the HTLC hook's index, guard and exposure bounds. Every
I/O of the product goes through here; the pure core (bitcoin/, crypto/, factory/, protocol/) does none."""
