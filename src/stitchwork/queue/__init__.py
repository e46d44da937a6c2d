"""Queue backends: which job runs next, and waking idle workers. Chosen by ``queue_url``."""
