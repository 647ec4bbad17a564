"""Test doubles, kept out of the product packages: ``tests.fakes.<package>`` holds the fakes of ``<package>``."""
