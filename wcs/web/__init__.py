"""Web pages served on the HTTP port: the WebSDK demo pages and the official SDK they load."""
