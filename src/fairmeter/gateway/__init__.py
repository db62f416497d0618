"""The ASGI gateway: routes per provider, upstream client, stream tap, fairmeter's own API."""
