"""The webhook notifier: sends delivery rows, signed, records attempts, schedules retries."""
