"""WebRTC: the Flashphoner WebSDK WebSocket API (signalling) and aiortc peers (publish, play)."""
