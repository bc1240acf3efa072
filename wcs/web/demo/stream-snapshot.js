// Stream Snapshot: publish the camera, then ask the server for a PNG of the live stream.
(function () {
    "use strict";
    if (!Demo.sdkLoaded()) {
        return;
    }
    Flashphoner.init({});
    var SESSION_STATUS = Flashphoner.constants.SESSION_STATUS;
    var STREAM_STATUS = Flashphoner.constants.STREAM_STATUS;
    var STREAM_EVENT = Flashphoner.constants.STREAM_EVENT;
    var STREAM_EVENT_TYPE = Flashphoner.constants.STREAM_EVENT_TYPE;

    var session = null;
    var publishStream = null;
    var publishBtn = document.getElementById("publishBtn");
    var snapshotBtn = document.getElementById("snapshotBtn");
    var snapshotImg = document.getElementById("snapshotImg");

    document.getElementById("urlServer").value = Demo.defaultUrlServer();
    document.getElementById("streamName").value = Demo.randomName();

    function refreshButtons() {
        var publishing = publishStream !== null && publishStream.status() === STREAM_STATUS.PUBLISHING;
        publishBtn.textContent = publishStream ? "Stop" : "Start";
        publishBtn.disabled = false;
        snapshotBtn.disabled = !publishing;
    }

    function startStreaming() {
        publishStream = Demo.cameraStream(session, Demo.field("streamName"), function (stream, ended) {
            if (ended) {
                publishStream = null;
            }
            refreshButtons();
        });
        publishStream.publish();
        refreshButtons();
    }

    publishBtn.onclick = function () {
        if (publishStream) {
            publishStream.stop();
            return;
        }
        Demo.setText("publishStatus", "PENDING");
        Demo.setText("publishInfo", "");
        if (session !== null && session.status() === SESSION_STATUS.ESTABLISHED) {
            startStreaming();
            return;
        }
        var lost = function (s) {
            Demo.setText("publishStatus", s.status());
            session = null;
            publishStream = null;
            refreshButtons();
        };
        publishBtn.disabled = true;  // until the session is up or lost
        try {
            session = Flashphoner.createSession({urlServer: Demo.field("urlServer")})
                .on(SESSION_STATUS.ESTABLISHED, startStreaming)
                .on(SESSION_STATUS.DISCONNECTED, lost)
                .on(SESSION_STATUS.FAILED, lost);
        } catch (e) {
            session = null;
            Demo.setText("publishStatus", "FAILED");
            Demo.setText("publishInfo", String(e));
            refreshButtons();
        }
    };

    // The snapshot is a stream of its own, by name: the server answers with a STREAM_EVENT.
    snapshotBtn.onclick = function () {
        snapshotBtn.disabled = true;
        Demo.setText("snapshotStatus", "processing...");
        Demo.setText("snapshotInfo", "");
        session.createStream({name: Demo.field("streamName")}).on(STREAM_EVENT, function (event) {
            if (event.type === STREAM_EVENT_TYPE.SNAPSHOT_COMPLETED) {
                snapshotImg.src = "data:image/png;base64," + event.payload.snapshot;
                snapshotImg.hidden = false;
                Demo.setText("snapshotStatus", STREAM_STATUS.SNAPSHOT_COMPLETE);
            } else if (event.type === STREAM_EVENT_TYPE.SNAPSHOT_FAILED) {
                Demo.setText("snapshotStatus", STREAM_STATUS.FAILED);
                Demo.setText("snapshotInfo", event.payload.info);
            }
            refreshButtons();
        }).snapshot();
    };

    refreshButtons();
})();
