"""Notifications: alerts routed by rules to webhooks, email and chat, with escalation, reminders,
snoozes and digests, delivered at least once per channel and alert change."""
