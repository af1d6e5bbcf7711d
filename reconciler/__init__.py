"""The reconciler: polls providers for tasks whose callbacks are missing or unconfirmed."""
