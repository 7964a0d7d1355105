"""Alerts: delivering what the rules raise to people (webhooks, e-mail), escalating the
unanswered. Alert rows and their outbox are written by whoever changes an alert, in the same
transaction (the SQL function tether_notify); this package delivers and escalates."""
