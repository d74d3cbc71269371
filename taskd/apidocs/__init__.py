"""The /docs page: taskd's own HTML and start-up script around the Swagger UI package's files."""
