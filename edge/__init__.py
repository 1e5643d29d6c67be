"""The edge gateway: score at the plant and store-and-forward to Kafka through uplink outages."""
