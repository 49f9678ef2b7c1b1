"""Assets of the report and the web UI (a package so that they ship as package data)."""
