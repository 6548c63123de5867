"""Reference servers the scenarios compare imserver against."""
