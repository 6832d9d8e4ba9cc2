//! The DPS client against the emulator over HTTPS: every operation, every error class,
//! concurrency, throttling and authentication.

mod support;

use std::{sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use dps_emulator::{EmulatorConfig, Faults, Quotas};
use dps_operator::dps::{
    Client, ClientConfig, Error, IfMatch, RetryClass,
    auth::{Authenticator, WorkloadIdentityConfig},
    models::*,
    rate_limit::RateLimiter,
};
use futures::TryStreamExt;
use serde_json::json;
use support::dps::{client, client_with, emulator};

fn symmetric_key_enrollment(id: &str) -> IndividualEnrollment {
    IndividualEnrollment {
        registration_id: id.into(),
        attestation: AttestationMechanism {
            type_: AttestationType::SymmetricKey,
            symmetric_key: Some(SymmetricKeyAttestation::default()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn symmetric_key_group(id: &str) -> EnrollmentGroup {
    EnrollmentGroup {
        enrollment_group_id: id.into(),
        attestation: AttestationMechanism {
            type_: AttestationType::SymmetricKey,
            symmetric_key: Some(SymmetricKeyAttestation::default()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn certificate_pem(common_name: &str) -> String {
    let mut params = rcgen::CertificateParams::new(vec![common_name.into()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
}

fn certificate_slot(pem: &str) -> X509Certificates {
    X509Certificates {
        primary: Some(X509CertificateWithInfo { certificate: Some(pem.into()), info: None }),
        secondary: None,
    }
}

#[tokio::test]
async fn individual_enrollment_lifecycle_follows_etags() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let client = client(&emulator);

    let mut desired = symmetric_key_enrollment("boiler:0042");
    desired.device_id = Some("boiler-0042".into());
    desired.iot_hubs = Some(vec!["contoso-west.azure-devices.net".into()]);
    desired.allocation_policy = Some(AllocationPolicy::Static);
    desired.optional_device_information = Some(serde_json::from_str(r#"{"serial":"CH-1"}"#).unwrap());
    desired.initial_twin = Some(InitialTwin {
        tags: Some(serde_json::from_str(r#"{"site":"Redmond"}"#).unwrap()),
        properties: Some(InitialTwinProperties {
            desired: Some(serde_json::from_str(r#"{"interval":60}"#).unwrap()),
        }),
    });
    let created = client.put(&desired, IfMatch::None).await.expect("created");
    let etag = created.etag.clone().expect("an etag");
    assert!(created.created_date_time_utc.is_some() && created.last_updated_date_time_utc.is_some());
    // Settings left out stay out: DPS fills in no defaults.
    assert_eq!(
        (created.provisioning_status, created.capabilities, created.reprovision_policy),
        (None, None, None)
    );
    let answered = created.attestation.symmetric_key.clone().expect("a PUT answers with the keys");
    assert_eq!(
        (created.device_id.as_deref(), created.initial_twin.as_ref()),
        (Some("boiler-0042"), desired.initial_twin.as_ref())
    );

    let read: IndividualEnrollment = client.get("BOILER:0042").await.expect("ids are case-insensitive");
    assert_eq!(read.attestation.symmetric_key, None, "a GET has no keys");
    assert_eq!(read.registration_state.and_then(|s| s.status), Some(RegistrationStatus::Unassigned));
    assert_eq!(read.etag, created.etag);
    let keys = client.attestation_mechanism::<IndividualEnrollment>("boiler:0042").await.unwrap();
    let keys = keys.symmetric_key.expect("the attestation mechanism has the keys");
    assert_eq!(keys, answered, "the keys the PUT answered are the ones DPS holds");
    for key in [keys.primary_key.as_ref().unwrap(), keys.secondary_key.as_ref().unwrap()] {
        assert_eq!(BASE64.decode(key.expose()).unwrap().len(), 64, "generated keys are 64 bytes");
    }

    let conflict = client.put(&desired, IfMatch::None).await.unwrap_err();
    assert!(matches!(conflict, Error::Conflict { .. }), "{conflict}");
    assert_eq!(conflict.retry_class(), RetryClass::Reread);

    desired.provisioning_status = Some(ProvisioningStatus::Disabled);
    let updated = client.put(&desired, IfMatch::Etag(&etag)).await.expect("updated with the etag");
    let new_etag = updated.etag.clone().unwrap();
    assert_ne!(new_etag, etag, "every write changes the etag");
    assert_eq!(updated.created_date_time_utc, created.created_date_time_utc);
    let stale = client.put(&desired, IfMatch::Etag(&etag)).await.unwrap_err();
    assert!(matches!(stale, Error::PreconditionFailed { .. }), "{stale}");
    let quoted = format!("\"{new_etag}\"");
    client.put(&desired, IfMatch::Etag(&quoted)).await.expect("a quoted etag matches too");
    client.put(&desired, IfMatch::Any).await.expect("If-Match: * overwrites");
    let keys_after = client
        .attestation_mechanism::<IndividualEnrollment>("boiler:0042")
        .await
        .unwrap()
        .symmetric_key
        .unwrap();
    assert_eq!(keys_after, keys, "updates without keys keep the generated keys");

    let stale_delete =
        client.delete::<IndividualEnrollment>("boiler:0042", IfMatch::Etag(&etag)).await.unwrap_err();
    assert!(matches!(stale_delete, Error::PreconditionFailed { .. }));
    client.delete::<IndividualEnrollment>("boiler:0042", IfMatch::None).await.expect("deleted");
    let gone = client.get::<IndividualEnrollment>("boiler:0042").await.unwrap_err();
    assert!(matches!(gone, Error::NotFound { .. }), "{gone}");
    assert!(matches!(
        client.delete::<IndividualEnrollment>("boiler:0042", IfMatch::None).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn an_update_without_keys_keeps_them_and_given_keys_are_used() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let client = client(&emulator);
    let mut group = symmetric_key_group("thermostats");
    let key = BASE64.encode([7u8; 32]);
    group.attestation.symmetric_key = Some(SymmetricKeyAttestation {
        primary_key: Some(Secret::new(&key)),
        secondary_key: Some(Secret::new(&key)),
    });
    let created = client.put(&group, IfMatch::None).await.unwrap();

    group.attestation.symmetric_key = Some(SymmetricKeyAttestation::default());
    group.iot_hubs = Some(vec!["contoso-east.azure-devices.net".into()]);
    client.put(&group, IfMatch::Etag(created.etag.as_deref().unwrap())).await.unwrap();
    let keys =
        client.attestation_mechanism::<EnrollmentGroup>("thermostats").await.unwrap().symmetric_key.unwrap();
    assert_eq!(keys.primary_key.unwrap().expose(), key);
}

#[tokio::test]
async fn x509_certificate_info_is_computed_from_the_uploaded_certificate() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let client = client(&emulator);
    let pem = certificate_pem("Contoso Devices CA");
    let facts = dps_operator::certificates::read(&pem).unwrap();

    let group = EnrollmentGroup {
        enrollment_group_id: "cameras".into(),
        attestation: AttestationMechanism {
            type_: AttestationType::X509,
            x509: Some(X509Attestation {
                signing_certificates: Some(certificate_slot(&pem)),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let created = client.put(&group, IfMatch::None).await.unwrap();
    let slot = created.attestation.x509.unwrap().signing_certificates.unwrap().primary.unwrap();
    assert_eq!(slot.certificate, None, "the certificate is never returned");
    let info = slot.info.expect("certificate info");
    assert_eq!(info.subject_name, "CN=Contoso Devices CA");
    assert_eq!(info.sha256_thumbprint, facts.sha256_thumbprint);
    assert_eq!(info.sha1_thumbprint, facts.sha1_thumbprint);
    assert_eq!(info.not_after_utc.0, facts.not_after);

    let mut invalid = group.clone();
    invalid.enrollment_group_id = "broken".into();
    invalid.attestation.x509 = Some(X509Attestation {
        signing_certificates: Some(certificate_slot("gkozpt")),
        ..Default::default()
    });
    let refused = client.put(&invalid, IfMatch::None).await.unwrap_err();
    assert!(
        matches!(refused, Error::InvalidRequest { .. }) && refused.to_string().contains("certificate"),
        "{refused}"
    );
    assert_eq!(refused.retry_class(), RetryClass::Permanent);

    let references = EnrollmentGroup {
        enrollment_group_id: "line-1".into(),
        attestation: AttestationMechanism {
            type_: AttestationType::X509,
            x509: Some(X509Attestation {
                ca_references: Some(X509CaReferences {
                    primary: Some("contoso-root".into()),
                    secondary: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let stored = client.put(&references, IfMatch::None).await.unwrap();
    assert_eq!(
        stored.attestation.x509.unwrap().ca_references.unwrap().primary.as_deref(),
        Some("contoso-root")
    );

    let tpm = IndividualEnrollment {
        registration_id: "kiosk-3".into(),
        attestation: AttestationMechanism {
            type_: AttestationType::Tpm,
            tpm: Some(TpmAttestation { endorsement_key: BASE64.encode([9u8; 256]), storage_root_key: None }),
            ..Default::default()
        },
        ..Default::default()
    };
    client.put(&tpm, IfMatch::None).await.expect("a TPM enrollment");
    let tpm_group = EnrollmentGroup {
        enrollment_group_id: "tpm-group".into(),
        attestation: tpm.attestation.clone(),
        ..Default::default()
    };
    assert!(matches!(client.put(&tpm_group, IfMatch::None).await, Err(Error::InvalidRequest { .. })));
}

#[tokio::test]
async fn queries_page_through_everything_as_a_stream() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let client = client(&emulator);
    for i in 0..23 {
        client.put(&symmetric_key_group(&format!("group-{i:02}")), IfMatch::None).await.unwrap();
    }
    emulator.reset_calls();
    let groups: Vec<EnrollmentGroup> = client.query("SELECT *", Some(5)).try_collect().await.unwrap();
    let ids: Vec<String> = groups.iter().map(|g| g.enrollment_group_id.clone()).collect();
    let expected: Vec<String> = (0..23).map(|i| format!("group-{i:02}")).collect();
    assert_eq!(ids, expected);
    assert!(groups.iter().all(|g| g.attestation.symmetric_key.is_none()), "queries return no keys");
    assert_eq!(emulator.calls().get("EnrollmentGroup_Query"), Some(&5), "23 items in pages of 5");

    let none: Vec<IndividualEnrollment> = client.query("SELECT *", None).try_collect().await.unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn bulk_operations_go_in_calls_of_ten_with_per_item_errors() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let client = client(&emulator);
    let items: Vec<IndividualEnrollment> =
        (0..23).map(|i| symmetric_key_enrollment(&format!("device-{i:02}"))).collect();
    let created = client.bulk(BulkMode::Create, &items).await.unwrap();
    assert!(created.is_successful && created.errors.is_empty());
    assert_eq!(emulator.calls().get("IndividualEnrollment_RunBulkOperation"), Some(&3));

    let mut again = items[..2].to_vec();
    again.push(symmetric_key_enrollment("device-new"));
    let result = client.bulk(BulkMode::Create, &again).await.unwrap();
    assert!(!result.is_successful);
    let failed: Vec<(&str, i32)> =
        result.errors.iter().map(|e| (e.registration_id.as_str(), e.error_code / 1000)).collect();
    assert_eq!(failed, [("device-00", 409), ("device-01", 409)]);
    client.get::<IndividualEnrollment>("device-new").await.expect("the good item was created");

    let deleted = client.bulk(BulkMode::Delete, &items).await.unwrap();
    assert!(deleted.is_successful);
    let left: Vec<IndividualEnrollment> = client.query("SELECT *", None).try_collect().await.unwrap();
    assert_eq!(left.len(), 1);

    // Mode update without etags never overwrites: each existing item is answered 409 (as DPS
    // does, see the emulator's `Store::bulk`), and what is missing is created.
    let groups = client.bulk(BulkMode::Update, &[symmetric_key_group("bulk-group")]).await.unwrap();
    assert!(groups.is_successful && groups.errors.is_empty(), "update creates what is missing");
    let again = client.bulk(BulkMode::Update, &[symmetric_key_group("bulk-group")]).await.unwrap();
    let failed: Vec<(&str, i32)> =
        again.errors.iter().map(|e| (e.enrollment_group_id.as_str(), e.error_code)).collect();
    assert_eq!(failed, [("bulk-group", 409202)]);
}

#[tokio::test]
async fn registration_states_are_read_queried_by_group_and_deleted() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let client = client(&emulator);
    for i in 0..7 {
        emulator.add_registration(
            json!({
                "registrationId": format!("thermostat-{i}"),
                "status": if i == 0 { "failed" } else { "assigned" },
                "assignedHub": "contoso-west.azure-devices.net",
                "deviceId": format!("thermostat-{i}"),
            }),
            Some("Thermostats".into()),
        );
    }
    emulator.add_registration(json!({"registrationId": "other"}), Some("other-group".into()));
    let state = client.get_registration("thermostat-3").await.unwrap();
    assert_eq!(state.status, Some(RegistrationStatus::Assigned));
    let members: Vec<DeviceRegistrationState> =
        client.query_registrations("thermostats", Some(3)).try_collect().await.unwrap();
    assert_eq!(members.len(), 7);
    assert_eq!(emulator.calls().get("DeviceRegistrationState_Query"), Some(&3));

    client.delete_registration("thermostat-3", IfMatch::None).await.unwrap();
    assert!(matches!(client.get_registration("thermostat-3").await, Err(Error::NotFound { .. })));
    let stale = client.delete_registration("thermostat-4", IfMatch::Etag("not-the-etag")).await.unwrap_err();
    assert!(matches!(stale, Error::PreconditionFailed { .. }));
}

#[tokio::test]
async fn many_writers_with_one_etag_produce_exactly_one_winner() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let client = Arc::new(client(&emulator));
    let created = client.put(&symmetric_key_group("contended"), IfMatch::None).await.unwrap();
    let etag = created.etag.unwrap();
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let (client, etag) = (client.clone(), etag.clone());
            tokio::spawn(async move {
                let mut group = symmetric_key_group("contended");
                group.iot_hubs = Some(vec![format!("hub-{i}.azure-devices.net")]);
                client.put(&group, IfMatch::Etag(&etag)).await
            })
        })
        .collect();
    let mut winners = 0;
    for writer in writers {
        match writer.await.unwrap() {
            Ok(_) => winners += 1,
            Err(Error::PreconditionFailed { .. }) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(winners, 1);
}

/// A lost answer: the write happened, the client only sees the connection close.
async fn lost_answers_are_network_errors_though_the_write_happened(
    emulator: &dps_emulator::RunningEmulator,
    client: &Client,
) {
    emulator.set_faults(Faults { lost_answer_rate: 1.0, ..Default::default() });
    let lost = client.delete::<EnrollmentGroup>("first", IfMatch::None).await.unwrap_err();
    assert!(matches!(lost, Error::Network { .. }), "{lost:?}");
    emulator.set_faults(Faults::default());
    let deleted = client.get::<EnrollmentGroup>("first").await.unwrap_err();
    assert!(matches!(deleted, Error::NotFound { .. }), "the delete happened: {deleted:?}");
    emulator.set_faults(Faults {
        lost_answer_rate: 1.0,
        operations: ["EnrollmentGroup_CreateOrUpdate".to_owned()].into(),
        ..Default::default()
    });
    let lost = client.put(&symmetric_key_group("first"), IfMatch::None).await.unwrap_err();
    assert!(matches!(lost, Error::Network { .. }), "{lost:?}");
    client.get::<EnrollmentGroup>("first").await.expect("created, and only that call faulted");
}

#[tokio::test]
async fn every_failure_is_classified() {
    let emulator = emulator(EmulatorConfig {
        quotas: Quotas { enrollment_groups_per_attestation: 1, ..Default::default() },
        ..Default::default()
    })
    .await;
    let client = client(&emulator);

    let invalid = client.put(&symmetric_key_enrollment("bad id"), IfMatch::None).await.unwrap_err();
    assert_eq!(
        (invalid.status(), invalid.reason(), invalid.retry_class()),
        (Some(400), "DpsRejected", RetryClass::Permanent)
    );
    assert!(invalid.to_string().contains("registration id"), "{invalid}");

    client.put(&symmetric_key_group("first"), IfMatch::None).await.unwrap();
    let quota = client.put(&symmetric_key_group("second"), IfMatch::None).await.unwrap_err();
    assert_eq!(quota.status(), Some(403));
    assert!(quota.to_string().contains("quota"), "{quota}");

    let wrong_key = format!(
        "HostName={};SharedAccessKeyName=provisioningserviceowner;SharedAccessKey={}",
        emulator.host_name(),
        BASE64.encode([1u8; 32])
    );
    let unauthorized = client_with(&emulator, &wrong_key, 1000, Duration::from_secs(5))
        .get::<EnrollmentGroup>("first")
        .await
        .unwrap_err();
    assert_eq!((unauthorized.status(), unauthorized.retry_class()), (Some(401), RetryClass::Credentials));

    emulator.set_faults(Faults { error_rates: [(503, 1.0)].into(), ..Default::default() });
    let unavailable = client.get::<EnrollmentGroup>("first").await.unwrap_err();
    assert_eq!((unavailable.status(), unavailable.retry_class()), (Some(503), RetryClass::Backoff));

    emulator.set_faults(Faults { drop_rate: 1.0, ..Default::default() });
    let dropped = client.get::<EnrollmentGroup>("first").await.unwrap_err();
    assert!(matches!(dropped, Error::Network { .. }), "{dropped:?}");
    assert_eq!(dropped.retry_class(), RetryClass::Backoff);

    lost_answers_are_network_errors_though_the_write_happened(&emulator, &client).await;

    emulator.set_faults(Faults { latency_ms: 2000, ..Default::default() });
    let slow = client_with(&emulator, &emulator.connection_string(), 1000, Duration::from_millis(300));
    let timeout = slow.get::<EnrollmentGroup>("first").await.unwrap_err();
    assert!(matches!(timeout, Error::Timeout { .. }), "{timeout:?}");
    assert_eq!((timeout.reason(), timeout.retry_class()), ("DpsUnreachable", RetryClass::Backoff));

    emulator.set_faults(Faults::default());
    emulator.set_operations_per_minute(Some(60));
    let mut throttled = None;
    for _ in 0..10 {
        if let Err(error) = client.get::<EnrollmentGroup>("first").await {
            throttled = Some(error);
            break;
        }
    }
    let throttled = throttled.expect("throttled after the burst");
    assert!(matches!(throttled, Error::Throttled { retry_after: Some(_), .. }), "{throttled:?}");
    assert!(
        matches!(throttled.retry_class(), RetryClass::After(Some(wait)) if wait >= Duration::from_secs(1))
    );

    let address = emulator.address();
    emulator.stop().await;
    let gone = client.get::<EnrollmentGroup>("first").await.unwrap_err();
    assert!(matches!(gone, Error::Network { .. }), "{gone:?} (nothing listens on {address})");
}

#[tokio::test]
async fn a_client_paced_below_the_dps_rate_is_never_throttled() {
    let emulator = emulator(EmulatorConfig { operations_per_minute: Some(300), ..Default::default() }).await;
    let paced = client_with(&emulator, &emulator.connection_string(), 240, Duration::from_secs(10));
    paced.put(&symmetric_key_group("paced"), IfMatch::None).await.unwrap();
    for _ in 0..40 {
        paced.get::<EnrollmentGroup>("paced").await.expect("never throttled");
    }
    assert_eq!(emulator.calls().get("EnrollmentGroup_Get"), Some(&40));
}

#[tokio::test]
async fn after_a_429_the_client_waits_out_retry_after_for_every_caller() {
    let emulator = emulator(EmulatorConfig { operations_per_minute: Some(60), ..Default::default() }).await;
    let client = client(&emulator);
    client.put(&symmetric_key_group("busy"), IfMatch::None).await.unwrap();
    let retry_after = loop {
        match client.get::<EnrollmentGroup>("busy").await {
            Ok(_) => continue,
            Err(Error::Throttled { retry_after: Some(wait), .. }) => break wait,
            Err(other) => panic!("unexpected {other}"),
        }
    };
    let started = std::time::Instant::now();
    client
        .get::<EnrollmentGroup>("busy")
        .await
        .expect("the next call waits for Retry-After and goes through");
    assert!(
        started.elapsed() >= retry_after,
        "waited {:?}, DPS asked for {retry_after:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn tls_is_verified_and_a_ca_bundle_makes_the_emulator_trusted() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let connection = emulator.connection_string().parse().unwrap();
    let untrusting = Client::new(ClientConfig {
        host: emulator.host_name().into(),
        authenticator: Arc::new(Authenticator::shared_access(connection)),
        rate_limiter: Arc::new(RateLimiter::new(1000)),
        extra_root_certificates: None,
        timeout: Duration::from_secs(5),
        resolve: Vec::new(),
        observer: None,
    })
    .unwrap();
    let refused = untrusting.get::<EnrollmentGroup>("x").await.unwrap_err();
    assert!(matches!(refused, Error::Network { .. }), "an unknown CA is refused: {refused:?}");
    assert!(matches!(client(&emulator).get::<EnrollmentGroup>("x").await, Err(Error::NotFound { .. })));
}

#[tokio::test]
async fn workload_identity_tokens_come_from_the_authority_and_are_accepted() {
    let client_id = "6f1b3c2e-7a4d-4e1b-9c3a-2d5e8f0a1b7c";
    let emulator =
        emulator(EmulatorConfig { entra_client_ids: Some(vec![client_id.into()]), ..Default::default() })
            .await;
    let token_file = std::env::temp_dir().join(format!("dps-federated-token-{}", std::process::id()));
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2ln")
        .unwrap();
    let entra_client = |client_id: &str| {
        Client::new(ClientConfig {
            host: emulator.host_name().into(),
            authenticator: Arc::new(Authenticator::workload_identity(WorkloadIdentityConfig {
                client_id: client_id.into(),
                tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
                token_file: token_file.clone(),
                authority_host: emulator.url(),
                scope: dps_operator::dps::auth::DPS_SCOPE.into(),
            })),
            rate_limiter: Arc::new(RateLimiter::new(1000)),
            extra_root_certificates: emulator.ca_certificate().map(str::to_owned),
            timeout: Duration::from_secs(5),
            resolve: Vec::new(),
            observer: None,
        })
        .unwrap()
    };
    let client = entra_client(client_id);
    client.put(&symmetric_key_group("entra"), IfMatch::None).await.expect("authorized with a bearer token");
    client.get::<EnrollmentGroup>("entra").await.expect("the token is reused");

    let stranger = entra_client("00000000-0000-0000-0000-000000000000")
        .get::<EnrollmentGroup>("entra")
        .await
        .unwrap_err();
    assert!(matches!(stranger, Error::Authentication { .. }), "{stranger:?}");
    assert_eq!(stranger.retry_class(), RetryClass::Credentials);
    let _ = std::fs::remove_file(token_file);
}

#[tokio::test]
async fn state_survives_a_restart_with_a_state_file() {
    let state_file = std::env::temp_dir().join(format!("dps-emulator-state-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&state_file);
    let config = EmulatorConfig { state_file: Some(state_file.clone()), ..Default::default() };
    let first = emulator(config.clone()).await;
    let address = first.address();
    let created = client(&first).put(&symmetric_key_group("persistent"), IfMatch::None).await.unwrap();
    first.stop().await;

    let second = emulator(EmulatorConfig { listen: address, ..config }).await;
    let read: EnrollmentGroup = client(&second).get("persistent").await.unwrap();
    assert_eq!(read.etag, created.etag);
    let _ = std::fs::remove_file(state_file);
}
