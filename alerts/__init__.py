"""Alerts: an alert's whole life. `lifecycle` (pure) says what each action does (open, repeat,
clear, acknowledge, resolve, escalate); `store` applies it in the caller's transaction, with the
alert's history and its outbox (the SQL function tether_notify), for ingest, the API and the
timers alike; `deliver` sends the outbox through `channels` (webhook JSON, DingTalk, WeCom,
e-mail) and escalates the unanswered. Imports neither `api` nor `ingest`."""
