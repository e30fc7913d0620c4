#!/usr/bin/env python3
"""bLIP-50 feature bit 729 (`option_supports_lsps`) for a node that runs superscalar as an LSP:
`lightningd --plugin=superscalar_plugin.py --plugin=superscalar_lsps_feature.py`.

lightningd takes a plugin's feature bits from its manifest, before any option is known, and hands them
to connectd and gossipd before any plugin's init: the main plugin, which is also the client, cannot set
the bit (bLIP-50: "Clients MUST NOT set features bit numbered 729"). So the bit lives in this separate
plugin, which only an LSP loads. Loaded on a node without `superscalar-lsp=true`, it logs that it must
be removed and disables itself."""

from superscalar.cln.lsps_feature import build_feature_plugin

if __name__ == "__main__":
    build_feature_plugin().run()
