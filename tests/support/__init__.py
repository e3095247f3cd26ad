"""Helpers shared by the tests: a real Mosquitto broker and a device-side subprocess."""
