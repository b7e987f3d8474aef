//! guard's deploy files: a typed model of a guard-in-front-of-MLflow deployment and one pure
//! renderer per target (docker-compose, systemd, supervisord), plus the atomic writer.
