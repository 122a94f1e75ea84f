"""Model implementations (pure: no training imports)."""
