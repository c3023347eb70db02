"""Stage logic: plain, typed functions, with thin Prefect task wrappers where they add value."""
