"""The helper role: a node that serves other LSPs' clients (issue 23). Its watchtower keeps their
sealed penalty transactions and publishes one when the revoked commitment it answers confirms."""
