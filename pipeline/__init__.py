"""Chest X-ray pneumonia platform: the library every adapter (CLI, Airflow, Django) calls.

Importing the package is cheap; torch and mlflow are imported by the modules that need them.
"""
