"""Shared test configuration: the mmo pytest plugin is loaded from the installed package."""
