// Two Way Streaming: connect to the server, publish the camera, play any stream. Official WebSDK API only.
(function () {
    "use strict";
    if (!Demo.sdkLoaded()) {
        return;
    }
    Flashphoner.init({});
    var SESSION_STATUS = Flashphoner.constants.SESSION_STATUS;
    var STREAM_STATUS = Flashphoner.constants.STREAM_STATUS;

    var session = null;
    var publishStream = null;
    var playStream = null;

    var connectBtn = document.getElementById("connectBtn");
    var publishBtn = document.getElementById("publishBtn");
    var playBtn = document.getElementById("playBtn");

    document.getElementById("urlServer").value = Demo.defaultUrlServer();
    var name = Demo.randomName();
    document.getElementById("publishName").value = name;
    document.getElementById("playName").value = name;

    function connected() {
        return session !== null && session.status() === SESSION_STATUS.ESTABLISHED;
    }

    function refreshButtons() {
        connectBtn.textContent = session ? "Disconnect" : "Connect";
        publishBtn.textContent = publishStream ? "Stop" : "Publish";
        playBtn.textContent = playStream ? "Stop" : "Play";
        publishBtn.disabled = !connected();
        playBtn.disabled = !connected();
    }

    function onSessionStatus(s) {
        Demo.setText("connectStatus", s.status());
        if (s.status() !== SESSION_STATUS.ESTABLISHED) {
            session = null;
            publishStream = null;
            playStream = null;
        }
        refreshButtons();
    }

    connectBtn.onclick = function () {
        if (session) {
            session.disconnect();
            return;
        }
        Demo.setText("connectStatus", "CONNECTING");
        Demo.setText("connectInfo", "");
        try {
            session = Flashphoner.createSession({urlServer: Demo.field("urlServer")})
                .on(SESSION_STATUS.ESTABLISHED, onSessionStatus)
                .on(SESSION_STATUS.DISCONNECTED, onSessionStatus)
                .on(SESSION_STATUS.FAILED, onSessionStatus);
        } catch (e) {
            session = null;
            Demo.setText("connectStatus", "FAILED");
            Demo.setText("connectInfo", String(e));
        }
        refreshButtons();
    };

    publishBtn.onclick = function () {
        if (publishStream) {
            publishStream.stop();
            return;
        }
        publishStream = Demo.cameraStream(session, Demo.field("publishName"), function (stream, ended) {
            if (ended) {
                publishStream = null;
                refreshButtons();
            }
        });
        Demo.setText("publishStatus", "PENDING");
        Demo.setText("publishInfo", "");
        publishStream.publish();
        refreshButtons();
    };

    playBtn.onclick = function () {
        if (playStream) {
            playStream.stop();
            return;
        }
        var ended = function (stream) {
            Demo.showStatus("play", stream);
            playStream = null;
            refreshButtons();
        };
        playStream = session.createStream({
            name: Demo.field("playName"),
            display: document.getElementById("remoteVideo")
        }).on(STREAM_STATUS.PLAYING, function (stream) {
            Demo.showStatus("play", stream);
        }).on(STREAM_STATUS.STOPPED, ended).on(STREAM_STATUS.FAILED, ended);
        Demo.setText("playStatus", "PENDING");
        Demo.setText("playInfo", "");
        playStream.play();
        refreshButtons();
    };

    refreshButtons();
})();
