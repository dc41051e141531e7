"""Stand-ins for the warehouse devices, speaking their real protocols over real transports."""
