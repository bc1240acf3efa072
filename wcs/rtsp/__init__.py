"""RTSP/1.0 ingest and camera pull: messages, SDP, authentication, RTP and RFC 6184 H.264."""
