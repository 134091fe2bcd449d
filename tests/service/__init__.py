"""The platform as a service (issue 16): auth, limits under attack, durability, PostgreSQL."""
