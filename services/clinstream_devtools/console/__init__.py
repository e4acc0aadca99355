"""Demo data for the site console: a synthetic cohort's feature rows written straight into a site's store."""
