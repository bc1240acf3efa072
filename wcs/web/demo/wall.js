// Stream Wall: every live stream as a tile whose picture comes from the image URL
// (GET /rest-api/stream/snapshot). Plain fetch(), no WebSDK.
(function () {
    "use strict";
    var LIST_MS = 2000;     // how often the list of streams is asked for
    var REFRESH_MS = 2000;  // how often each tile asks for a picture
    var TILE_WIDTH = 320;
    var REST = "../rest-api/stream/";

    var tilesEl = document.getElementById("tiles");
    var tiles = new Map();  // stream name -> tile

    function setText(id, text) {
        document.getElementById(id).textContent = text || "";
    }

    function snapshotUrl(name, params) {
        return REST + "snapshot?" + new URLSearchParams(Object.assign({streamName: name}, params));
    }

    function child(parent, tag, className) {
        var node = document.createElement(tag);
        node.className = className;
        parent.appendChild(node);
        return node;
    }

    function addTile(name) {
        var figure = document.createElement("figure");
        figure.className = "tile";
        figure.dataset.stream = name;
        var picture = child(figure, "div", "picture");
        var link = child(picture, "a", "");
        link.href = snapshotUrl(name, {format: "png"});  // full size
        link.target = "_blank";
        var tile = {
            name: name,
            figure: figure,
            img: child(link, "img", ""),
            reason: child(picture, "span", "reason"),
            meta: null,
            age: null,
            width: 0,
            etag: null,
            url: null,       // the object URL the <img> shows
            frame: null,     // {timestamp, ageMs, at}: the picture's capture time and age
            timer: null,
            gone: false
        };
        tile.img.alt = name;
        tile.img.hidden = true;
        var caption = child(figure, "figcaption", "");
        child(caption, "div", "name").textContent = name;
        tile.meta = child(caption, "div", "info meta");
        tile.age = child(caption, "div", "info age");
        // In name order.
        var next = Array.prototype.find.call(tilesEl.children, function (other) {
            return other.dataset.stream > name;
        });
        tilesEl.insertBefore(figure, next || null);
        tiles.set(name, tile);
        return tile;
    }

    function removeTile(tile) {
        tile.gone = true;
        clearTimeout(tile.timer);
        showPicture(tile, null);
        tile.figure.remove();
        tiles.delete(tile.name);
    }

    // The tile shows `blob` (null: no picture); the previous object URL is released.
    function showPicture(tile, blob) {
        var old = tile.url;
        tile.url = blob ? URL.createObjectURL(blob) : null;
        if (tile.url) {
            tile.img.src = tile.url;
        } else {
            tile.img.removeAttribute("src");
            tile.etag = null;
        }
        tile.img.hidden = !tile.url;
        if (old) {
            URL.revokeObjectURL(old);
        }
    }

    function showReason(tile, reason) {
        tile.reason.textContent = reason;
        tile.figure.dataset.reason = reason;
    }

    function noteFrame(tile, response) {
        var timestamp = Number(response.headers.get("X-Frame-Timestamp"));
        var ageMs = Number(response.headers.get("X-Frame-Age-Ms"));
        if (timestamp > 0) {
            // The server's age plus the time since: no trust in this machine's clock.
            tile.frame = {timestamp: timestamp, ageMs: ageMs, at: performance.now()};
            tile.figure.dataset.frameTimestamp = String(timestamp);
            showAge(tile);
        }
    }

    function showAge(tile) {
        if (!tile.frame) {
            tile.age.textContent = "";
            return;
        }
        var age = (tile.frame.ageMs + performance.now() - tile.frame.at) / 1000;
        tile.age.textContent = "frame " + age.toFixed(1) + " s old (" +
            new Date(tile.frame.timestamp).toLocaleTimeString() + ")";
    }

    // Why there is no picture: X-Snapshot-Error and the message of the WCS error JSON.
    function failed(tile, response) {
        var code = response.headers.get("X-Snapshot-Error") || "HTTP " + response.status;
        return response.json().catch(function () {
            return {};
        }).then(function (body) {
            if (tile.gone) {
                return;
            }
            showPicture(tile, null);
            tile.frame = null;
            showAge(tile);
            showReason(tile, code + (body && body.message ? ": " + body.message : ""));
        });
    }

    function refresh(tile) {
        var started = performance.now();
        var params = {format: "jpeg", maxAge: String(REFRESH_MS)};
        if (tile.width > TILE_WIDTH) {
            params.width = String(TILE_WIDTH);  // only downwards: the server never upscales
        }
        // 304 while the server has no newer picture than the one shown.
        var headers = tile.etag ? {"If-None-Match": tile.etag} : {};
        fetch(snapshotUrl(tile.name, params), {headers: headers, cache: "no-store"})
            .then(function (response) {
                if (tile.gone) {
                    return null;
                }
                if (response.status === 304) {
                    noteFrame(tile, response);
                    return null;
                }
                if (!response.ok) {
                    return failed(tile, response);
                }
                return response.blob().then(function (blob) {
                    if (tile.gone) {
                        return;
                    }
                    showPicture(tile, blob);
                    tile.etag = response.headers.get("ETag");
                    noteFrame(tile, response);
                    showReason(tile, "");
                });
            })
            .catch(function (error) {
                if (!tile.gone) {
                    showReason(tile, "request failed: " + error.message);
                }
            })
            .then(function () {
                if (!tile.gone) {
                    var wait = Math.max(0, started + REFRESH_MS - performance.now());
                    tile.timer = setTimeout(refresh, wait, tile);
                }
            });
    }

    function update(streams) {
        var live = new Map();
        streams.forEach(function (stream) {
            if (stream.published !== false) {
                live.set(stream.name, stream);
            }
        });
        tiles.forEach(function (tile, name) {
            if (!live.has(name)) {
                removeTile(tile);
            }
        });
        live.forEach(function (stream, name) {
            var tile = tiles.get(name);
            var fresh = tile === undefined;
            if (fresh) {
                tile = addTile(name);
            }
            tile.width = stream.width || 0;
            var video = !stream.hasVideo ? ["no video"]
                : [stream.width ? stream.width + "x" + stream.height : "size unknown",
                    stream.videoCodec];
            tile.meta.textContent = video.concat([stream.mediaProvider]).filter(Boolean).join(", ");
            if (fresh) {
                refresh(tile);
            }
        });
        setText("wallStatus", live.size ? live.size + " live stream" + (live.size > 1 ? "s" : "")
            : "No live streams");
    }

    // The list of streams; a 404 ("Streams not found") is an empty list.
    function poll() {
        fetch(REST + "find_all", {cache: "no-store"})
            .then(function (response) {
                if (response.status === 404) {
                    return [];
                }
                if (!response.ok) {
                    throw new Error("find_all answered HTTP " + response.status);
                }
                return response.json();
            })
            .then(function (streams) {
                update(streams);
                setText("wallInfo", "");
            })
            .catch(function (error) {
                setText("wallInfo", error.message);
            })
            .then(function () {
                setTimeout(poll, LIST_MS);
            });
    }

    setInterval(function () {
        tiles.forEach(showAge);
    }, 500);
    poll();
})();
