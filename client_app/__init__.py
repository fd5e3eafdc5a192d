"""fedlayer's Flower ClientApp: executes the server's layer plans on local data."""
