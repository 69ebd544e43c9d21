"""The reference shop: orders, inventory, payment, shipping and notifications services."""
