"""Storage: the SQL database, the embedder and the vector store."""
