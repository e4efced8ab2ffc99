"""The night shift: the scheduled job, the daemon, and the launchd / systemd files that start it."""
