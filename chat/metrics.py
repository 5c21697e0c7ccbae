"""Prometheus metrics of this process, served at `/metrics` in the text format."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

CONNECTIONS = Gauge("chat_connections", "Open WebSocket connections", registry=REGISTRY)
ROOMS = Gauge(
    "chat_rooms_local", "Rooms joined by at least one local connection", registry=REGISTRY
)
FRAMES_IN = Counter(
    "chat_frames_in", "Client frames received, by type", ["type"], registry=REGISTRY
)
MESSAGES_STORED = Counter(
    "chat_messages_stored", "Messages stored by this process", registry=REGISTRY
)
DELIVERIES = Counter(
    "chat_message_frames_queued", "Message frames queued to local connections", registry=REGISTRY
)
GAP_FILLS = Counter("chat_gap_fills", "Room gaps filled from PostgreSQL", registry=REGISTRY)
CATCH_UPS = Counter("chat_catch_ups", "Connections caught up from PostgreSQL", registry=REGISTRY)
BROKER_RECONNECTS = Counter("chat_broker_reconnects", "Broker link reconnects", registry=REGISTRY)
BROKER_ERRORS = Counter("chat_broker_errors", "Broker commands that failed", registry=REGISTRY)
PUBLISH_FAILURES = Counter(
    "chat_broker_publish_failures",
    "Publications that never reached the broker (link down, or the outbox full)",
    registry=REGISTRY,
)
CLOSES = Counter(
    "chat_closes", "Connections closed by the server, by close code", ["code"], registry=REGISTRY
)
PASSWORD_HASHES = Counter(
    "chat_password_hashes", "argon2 hashes and verifications run", registry=REGISTRY
)
THROTTLED = Counter(
    "chat_throttled",
    "Log-ins and sign-ups refused before hashing, by reason",
    ["reason"],
    registry=REGISTRY,
)
ERRORS = Counter("chat_errors", "Error replies, by code", ["code"], registry=REGISTRY)
HTTP_REQUESTS = Counter(
    "chat_http_requests",
    "HTTP requests, by route and status",
    ["route", "status"],
    registry=REGISTRY,
)
SEND_LATENCY = Histogram(
    "chat_send_seconds",
    "Time from a send frame to its durable ok",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "chat_webhook_deliveries",
    "Webhook delivery attempts by outcome: delivered, retried, failed",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOK_LAG = Histogram(
    "chat_webhook_lag_seconds",
    "Time from a webhook event being written to its delivery (or failure)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
    registry=REGISTRY,
)
WEBHOOK_OLDEST_PENDING = Gauge(
    "chat_webhook_oldest_pending_seconds",
    "Age of the oldest webhook event not yet delivered or failed (all processes)",
    registry=REGISTRY,
)
WEBHOOK_IN_FLIGHT = Gauge(
    "chat_webhook_in_flight", "Webhook deliveries in flight in this process", registry=REGISTRY
)
BROKER_CANARY_OK = Gauge(
    "chat_broker_canary_ok",
    "1 if the latest canary came back on every pub/sub link of this process, else 0",
    registry=REGISTRY,
)
BROKER_CANARY_SECONDS = Gauge(
    "chat_broker_canary_seconds",
    "Round trip of the latest canary that came back, publish to own subscription",
    registry=REGISTRY,
)
BROKER_CANARY_FAILURES = Counter(
    "chat_broker_canary_failures",
    "Canaries that did not come back in time (a pub/sub link that does not deliver)",
    registry=REGISTRY,
)
DB_REPLICA_LAG = Gauge(
    "chat_db_replica_lag_seconds",
    "How far the read replica's replay is behind the primary (checked every second)",
    registry=REGISTRY,
)
DB_REPLICA_USABLE = Gauge(
    "chat_db_replica_usable",
    "1 while reads may go to the replica (up, and lag within READ_MAX_LAG), else 0",
    registry=REGISTRY,
)
DB_READS = Counter(
    "chat_db_reads",
    "Reads that may go to a replica, by where they went (primary or replica)",
    ["target"],
    registry=REGISTRY,
)
