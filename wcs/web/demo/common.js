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

    return {
        defaultUrlServer: defaultUrlServer,
        sdkLoaded: sdkLoaded,
        setText: setText,
        field: field,
        randomName: randomName
    };
})();
