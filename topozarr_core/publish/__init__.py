"""Never half-published: the initialise/publish steps, root documents, the target contract."""
