// Registers one device with the official Azure IoT device SDK for Node.js over HTTP, as a device
// would, and prints the outcome as one line of JSON: {"ok": true, "result": {...}} or
// {"ok": false, "error": "...", "status": 401}.
//
// The request, a JSON object, is the only argument: host (the DPS host name, no port), address
// (host:port to connect to), idScope, registrationId, ca (PEM file the device trusts), and
// either symmetricKey (base64) or cert and key (PEM files, leaf first, then its chain).
//
// The SDK connects to port 443 of its host; `address` maps the host to the emulator's port, as a
// DNS entry and a port forward would, below the SDK.
'use strict';

const fs = require('fs');
const https = require('https');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Http } = require('azure-iot-provisioning-device-http');
const { Http: HttpBase } = require('azure-iot-http-base');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
const { X509Security } = require('azure-iot-security-x509');

const request = JSON.parse(process.argv[2]);
const [address, port] = request.address.split(':');

const agent = new https.Agent({ keepAlive: false });
const connect = agent.createConnection.bind(agent);
agent.createConnection = (options, callback) =>
  connect({ ...options, host: address, port: Number(port), servername: request.host }, callback);

const base = new HttpBase();
base.setOptions({ http: { agent }, ca: fs.readFileSync(request.ca, 'utf8') });
const transport = new Http(base);
transport.setTransportOptions({ pollingInterval: 200 });

const security = request.symmetricKey
  ? new SymmetricKeySecurityClient(request.registrationId, request.symmetricKey)
  : new X509Security(request.registrationId, {
      cert: fs.readFileSync(request.cert, 'utf8'),
      key: fs.readFileSync(request.key, 'utf8'),
    });

const client = ProvisioningDeviceClient.create(request.host, request.idScope, transport, security);
client.register((error, result) => {
  if (error) {
    const status = error.response && error.response.statusCode;
    console.log(JSON.stringify({ ok: false, error: error.message, name: error.name, status, result: error.result }));
  } else {
    console.log(JSON.stringify({ ok: true, result }));
  }
});
