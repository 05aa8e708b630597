"""Container tests of the node: a swarm harness driving the docker CLI, the SPEC scenarios, and
the seeder/leecher docker-compose round trip. See harness.py for the life of one run."""
