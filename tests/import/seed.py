"""Seeds a DPS the way a team with an existing DPS would have: enrollments of every shape, made with
the official Azure IoT DPS service SDK for Python (azure-iot-deviceprovisioning).

Environment: DPS_CONNECTION_STRING, DPS_CA_FILE (the emulator's CA), and DPS_SEED, a JSON object
with the certificates (PEM) and the hub names to use. Prints the ids it made, as JSON.
"""

import json
import os

from azure.iot.deviceprovisioning import DeviceProvisioningClient

seed = json.loads(os.environ["DPS_SEED"])
hubs = seed["hubs"]
client = DeviceProvisioningClient.from_connection_string(
    os.environ["DPS_CONNECTION_STRING"], connection_verify=os.environ["DPS_CA_FILE"]
)

# The endorsement key of azure-sdk-for-python's own TPM enrollment test.
ENDORSEMENT_KEY = (
    "AToAAQALAAMAsgAgg3GXZ0SEs/gakMyNRqXXJP1S124GUgtk8qHaGzMUaaoABgCAAEMAEAgAAAAAAAEAibym9HQP9vxCGF5dVc1QQsAGe021aUGJ"
    "zNol1/gycBx3jFsTpwmWbISRwnFvflWd0w2Mc44FAAZNaJOAAxwZvG8GvyLlHh6fGKdh+mSBL4iLH2bZ4Ry22cB3CJVjXmdGoz9Y/j3/NwLndBx"
    "QC+baNvzvyVQZ4/A2YL7vzIIj2ik4y+ve9ir7U0GbNdnxskqK1KFIITVVtkTIYyyFTIR0BySjPrRIDj7r7Mh5uF9HBppGKQCBoVSVV8dI91lNazm"
    "SdpGWyqCkO7iM4VvUMv2HT/ym53aYlUrau+Qq87Tu+uQipWYgRdF11KDfcpMHqqzBQQ1NpOJVhrsTrhyJzO7KNw=="
)

groups = [
    {
        "enrollmentGroupId": "thermostats-2026",
        # No keys: DPS makes them.
        "attestation": {"type": "symmetricKey"},
        "allocationPolicy": "hashed",
        "iotHubs": hubs,
        "initialTwin": {
            "tags": {"deviceType": "thermostat", "site": {"building": 7}},
            "properties": {"desired": {"interval": 60}},
        },
        "reprovisionPolicy": {"updateHubAssignment": True, "migrateDeviceData": False},
        "capabilities": {"iotEdge": False},
        "provisioningStatus": "enabled",
    },
    {
        "enrollmentGroupId": "Cameras_Line1",
        "attestation": {
            "type": "x509",
            "x509": {
                "signingCertificates": {
                    "primary": {"certificate": seed["signing_primary"]},
                    "secondary": {"certificate": seed["signing_secondary"]},
                }
            },
        },
        "allocationPolicy": "static",
        "iotHubs": hubs[:1],
        "capabilities": {"iotEdge": True},
        "provisioningStatus": "disabled",
    },
    {
        "enrollmentGroupId": "gateways",
        "attestation": {"type": "x509", "x509": {"caReferences": {"primary": seed["ca_name"]}}},
        "allocationPolicy": "custom",
        "customAllocationDefinition": {"webhookUrl": seed["webhook"], "apiVersion": "2021-10-01"},
    },
]

enrollments = [
    {
        "registrationId": "boiler-0042",
        "deviceId": "boiler-42",
        "attestation": {
            "type": "symmetricKey",
            "symmetricKey": {"primaryKey": seed["boiler_primary"], "secondaryKey": seed["boiler_secondary"]},
        },
        "optionalDeviceInformation": {"model": "B-42", "floor": 3},
        "provisioningStatus": "enabled",
    },
    {
        "registrationId": "camera-07",
        "attestation": {
            "type": "x509",
            "x509": {"clientCertificates": {"primary": {"certificate": seed["leaf"]}}},
        },
        "allocationPolicy": "geoLatency",
        "iotHubs": hubs,
    },
    {
        "registrationId": "tpm-device-01",
        "deviceId": "tpm-01",
        "attestation": {"type": "tpm", "tpm": {"endorsementKey": ENDORSEMENT_KEY}},
        "allocationPolicy": "static",
        "iotHubs": hubs[1:],
    },
    {
        "registrationId": "Disabled.Device",
        "attestation": {"type": "symmetricKey"},
        "provisioningStatus": "disabled",
    },
    {
        "registrationId": "edge-gw-1",
        "attestation": {"type": "symmetricKey"},
        "capabilities": {"iotEdge": True},
        "allocationPolicy": "custom",
        "customAllocationDefinition": {"webhookUrl": seed["webhook"], "apiVersion": "2021-10-01"},
        "initialTwin": {"tags": {"role": "gateway"}},
    },
]

for group in groups:
    client.enrollment_group.create_or_update(id=group["enrollmentGroupId"], enrollment_group=group)
for enrollment in enrollments:
    client.enrollment.create_or_update(id=enrollment["registrationId"], enrollment=enrollment)

print(json.dumps({
    "groups": [g["enrollmentGroupId"] for g in groups],
    "enrollments": [e["registrationId"] for e in enrollments],
}))
