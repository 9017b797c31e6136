use super::*;
use proptest::prelude::*;

fn claims() -> Claims {
    Claims {
        sub: "acc_1".into(),
        org: Some("org_1".into()),
        dev: "dev-1".into(),
        plan: "paid".into(),
        features: vec!["denoise".into()],
        iat: 1_000,
        exp: 2_000,
        grace: 3_000,
    }
}

fn setup() -> (Signer, KeySet) {
    let signer = Signer::from_secret("k1", [1u8; 32]).expect("valid kid");
    let mut keys = KeySet::new();
    keys.insert("k1", signer.public_key());
    (signer, keys)
}

#[test]
fn valid_token_verifies_and_round_trips_claims() {
    let (signer, keys) = setup();
    let token = signer.sign(&claims());
    let license = verify(&token, &keys, "dev-1", 1_500).expect("valid");
    assert_eq!(license.claims, claims());
    assert_eq!(license.kid, "k1");
    assert_eq!(license.status, Status::Active);
}

#[test]
fn grace_then_expired() {
    let (signer, keys) = setup();
    let token = signer.sign(&claims());
    assert_eq!(
        verify(&token, &keys, "dev-1", 2_000).map(|l| l.status),
        Ok(Status::Grace)
    );
    assert_eq!(
        verify(&token, &keys, "dev-1", 3_000),
        Err(VerifyError::Expired { grace_until: 3_000 })
    );
}

#[test]
fn wrong_device_is_refused() {
    let (signer, keys) = setup();
    let token = signer.sign(&claims());
    assert!(matches!(
        verify(&token, &keys, "dev-2", 1_500),
        Err(VerifyError::WrongDevice { .. })
    ));
}

#[test]
fn future_token_is_refused() {
    let (signer, keys) = setup();
    let token = signer.sign(&claims());
    assert!(matches!(
        verify(&token, &keys, "dev-1", 1_000 - CLOCK_SKEW_SECS - 1),
        Err(VerifyError::NotYetValid { .. })
    ));
}

#[test]
fn unknown_key_and_forged_key_are_refused() {
    let (_, keys) = setup();
    let other = Signer::from_secret("k2", [2u8; 32]).expect("valid kid");
    assert_eq!(
        verify(&other.sign(&claims()), &keys, "dev-1", 1_500),
        Err(VerifyError::UnknownKey("k2".into()))
    );
    // Another secret that claims to be k1.
    let forger = Signer::from_secret("k1", [3u8; 32]).expect("valid kid");
    assert_eq!(
        verify(&forger.sign(&claims()), &keys, "dev-1", 1_500),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn tampered_claims_are_refused() {
    let (signer, keys) = setup();
    let token = signer.sign(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut c = claims();
    c.exp = 9_999_999;
    let forged_payload = B64.encode(serde_json::to_vec(&c).expect("json"));
    let tampered = format!("{}.{}.{}.{}", parts[0], parts[1], forged_payload, parts[3]);
    assert_eq!(
        verify(&tampered, &keys, "dev-1", 1_500),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn malformed_tokens_are_refused() {
    let (_, keys) = setup();
    for bad in [
        "",
        "a",
        "a.b.c",
        "krisp1.k1.x.y.z",
        "krisp1.k1.!!.??",
        "krisp2.k1.a.b",
    ] {
        assert!(verify(bad, &keys, "dev-1", 1_500).is_err(), "{bad}");
    }
    assert!(matches!(
        verify("krisp1.k1.e30.AAAA", &keys, "dev-1", 1_500),
        Err(VerifyError::Malformed(_))
    ));
}

#[test]
fn bad_key_ids_are_rejected() {
    assert!(Signer::from_secret("", [0; 32]).is_err());
    assert!(Signer::from_secret("a.b", [0; 32]).is_err());
    assert!(Signer::from_secret(&"x".repeat(33), [0; 32]).is_err());
}

#[test]
fn public_key_base64_round_trips() {
    let (signer, _) = setup();
    let pk = signer.public_key();
    assert_eq!(PublicKey::from_base64(&pk.to_base64()), Ok(pk));
    assert!(PublicKey::from_base64("short").is_err());
}

proptest! {
    // Any single-byte change anywhere in a token must make it fail verification.
    #[test]
    fn any_byte_flip_is_refused(pos in 0usize..200, bit in 0u8..7) {
        let (signer, keys) = setup();
        let token = signer.sign(&claims());
        let mut bytes = token.into_bytes();
        let i = pos % bytes.len();
        bytes[i] ^= 1 << bit;
        if let Ok(s) = String::from_utf8(bytes) {
            prop_assert!(verify(&s, &keys, "dev-1", 1_500).is_err());
        }
    }

    // Arbitrary strings never panic the verifier.
    #[test]
    fn arbitrary_input_never_panics(s in ".{0,300}") {
        let (_, keys) = setup();
        let _ = verify(&s, &keys, "dev-1", 1_500);
    }
}
