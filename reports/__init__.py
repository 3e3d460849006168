"""What-if capacity-planning reports and CI regression checks of placement quality."""
