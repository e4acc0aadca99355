"""The site console: a read-only web view of pipeline health, participants (by pseudonym) and the cohort."""
