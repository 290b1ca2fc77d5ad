"""Recurring maintenance jobs (cron). Must not import migrate/."""
