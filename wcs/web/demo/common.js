// Shared by the demo pages: the WebSocket URL field, the SDK check and status output.
var Demo = (function () {
    "use strict";

    // WCS listens for the WebSDK on 8080 (ws) / 8443 (wss); `?urlServer=` overrides that,
    // because the page cannot know the port this server was configured with.
    function defaultUrlServer() {
        var fromQuery = new URLSearchParams(window.location.search).get("urlServer");
        if (fromQuery) {
            return fromQuery;
        }
        var secure = window.location.protocol === "https:";
        return (secure ? "wss://" : "ws://") + window.location.hostname + ":" + (secure ? "8443" : "8080");
    }

    // False (and the page says why, buttons disabled) when sdk/flashphoner.js did not load.
    function sdkLoaded() {
        if (typeof Flashphoner !== "undefined") {
            return true;
        }
        var error = document.getElementById("sdkError");
        error.textContent = "The Flashphoner WebSDK is not installed on this server " +
            "(sdk/flashphoner.js did not load): run `make node-deps` in the wcs checkout.";
        error.hidden = false;
        document.querySelectorAll("button").forEach(function (button) {
            button.disabled = true;
        });
        return false;
    }

    function setText(id, text) {
        document.getElementById(id).textContent = text || "";
    }

    function field(id) {
        return document.getElementById(id).value.trim();
    }

    function randomName() {
        return "stream-" + Math.random().toString(16).slice(2, 10);
    }

    // A stream's status and info into the page's `<prefix>Status` and `<prefix>Info` fields.
    function showStatus(prefix, stream) {
        setText(prefix + "Status", stream.status());
        setText(prefix + "Info", stream.getInfo());
    }

    // A stream (not yet published) of the camera, shown in #localVideo, named `name`. Each of its
    // statuses goes to the "publish" fields, then to `changed(stream, ended)`; `ended` is true for
    // UNPUBLISHED and FAILED.
    function cameraStream(session, name, changed) {
        var STREAM_STATUS = Flashphoner.constants.STREAM_STATUS;
        var on = function (ended) {
            return function (stream) {
                showStatus("publish", stream);
                changed(stream, ended);
            };
        };
        return session.createStream({
            name: name,
            display: document.getElementById("localVideo"),
            cacheLocalResources: true,
            receiveVideo: false,
            receiveAudio: false
        }).on(STREAM_STATUS.PUBLISHING, on(false))
            .on(STREAM_STATUS.UNPUBLISHED, on(true))
            .on(STREAM_STATUS.FAILED, on(true));
    }

    return {
        defaultUrlServer: defaultUrlServer,
        sdkLoaded: sdkLoaded,
        setText: setText,
        field: field,
        randomName: randomName,
        showStatus: showStatus,
        cameraStream: cameraStream
    };
})();
