"""FastStream entry points: the Kafka broker, its subscribers and publishers."""
