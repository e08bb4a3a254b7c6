"""Bulk video indexes: progress (the only writer of index and index-video status), search, export."""
