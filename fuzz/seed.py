#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/seeds/<target>/ from tollgate's test fixtures (the JWKS
of src/provider/jwks.rs's tests, the dev IdP's discovery document, the bodies of
src/api/body.rs's tests, the paths of tests/proxy/paths.rs, config.example.toml).
Run from anywhere: python3 fuzz/seed.py. The seeds are committed; rerun after changing this."""
import base64, json, os, shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "seeds")
TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb"
ISS = f"https://login.microsoftonline.com/{TENANT}/v2.0"
RSA_N = ("sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw")


def b64(obj):
    raw = obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def write(target, seeds):
    d = os.path.join(OUT, target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for i, s in enumerate(seeds):
        with open(os.path.join(d, f"seed-{i:02}"), "wb") as f:
            f.write(s if isinstance(s, bytes) else s.encode())


claims = {"aud": f"api://{CLIENT}", "iss": ISS, "iat": 1700000000, "nbf": 1700000000,
          "exp": 4102444800, "azp": "cccccccc-0000-1111-2222-dddddddddddd", "name": "Alice",
          "oid": "99999999-8888-7777-6666-555555555555", "scp": "access_as_user User.Read",
          "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "tid": TENANT, "ver": "2.0",
          "roles": ["Reports.Read"], "acrs": ["c1"]}
rs_token = f"{b64({'alg': 'RS256', 'kid': 'rsa', 'typ': 'JWT'})}.{b64(claims)}.{b64(b'sig' * 86)}"
hs_token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.c2ln"

write("token_extraction", [
    f"Bearer {rs_token}\n",
    f"bearer {hs_token}\nfoo=bar",
    f"\x00\naccess_token={rs_token}&x=1",
    f"Bearer a.b.c\naccess_token=a.b.c",
    "Basic dXNlcjpwYXNz\naccess_token=",
    "Bearer\n",
    "Bearer a\x01Bearer b\n",
    "\x00\naccess_token=a%2Eb&access_token=c",
])

ed_header = json.dumps({"alg": "EdDSA", "kid": "ed", "typ": "JWT"})
write("jwt_validate", [
    b"\x00" + rs_token.encode(),
    b"\x00" + hs_token.encode(),
    b"\x00" + f"{b64({'alg': 'none'})}.{b64(claims)}.".encode(),
    b"\x00" + f"{b64({'alg': 'RS256', 'kid': 'rsa', 'jku': 'https://evil.example/keys'})}.{b64(claims)}.c2ln".encode(),
    b"\x01" + f"{ed_header}\n{json.dumps(claims)}".encode(),
    b"\x01" + f"{ed_header}\n{json.dumps(dict(claims, iss=f'https://sts.windows.net/{TENANT}/', ver='1.0', appid='x'))}".encode(),
    b"\x01" + f"{ed_header}\n{json.dumps(dict(claims, nonce='n'))}".encode(),
    b"\x01" + f"{json.dumps({'alg': 'EdDSA', 'kid': 'ed', 'crit': ['exp']})}\n{json.dumps(claims)}".encode(),
    b"\x01" + f"{ed_header}\n{json.dumps(dict(claims, exp=1, aud=[CLIENT, 'other']))}".encode(),
])

jwks = {"keys": [
    {"kty": "RSA", "kid": "good", "use": "sig", "n": RSA_N, "e": "AQAB", "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0"},
    {"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N, "e": "AQAB"},
    {"kty": "RSA", "n": RSA_N, "e": "AQAB"},
    {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
    {"kty": "RSA", "kid": "hs-alg", "alg": "HS256", "n": RSA_N, "e": "AQAB"},
    {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": RSA_N, "e": "AQAB", "key_ops": ["verify"]},
    {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
    {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
]}
write("jwks", [json.dumps(jwks), json.dumps({"keys": []}), '{"keys": {}}', json.dumps({"keys": [jwks["keys"][0]] * 2})])

base = "http://127.0.0.1:9400"
disco = {
    "token_endpoint": f"{base}/{TENANT}/oauth2/v2.0/token",
    "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
    "jwks_uri": f"{base}/{TENANT}/discovery/v2.0/keys",
    "id_token_signing_alg_values_supported": ["RS256"],
    "issuer": ISS,
    "authorization_endpoint": f"{base}/{TENANT}/oauth2/v2.0/authorize",
    "end_session_endpoint": f"{base}/{TENANT}/oauth2/v2.0/logout",
    "tenant_region_scope": "WW",
}
write("discovery", [
    b"\x00" + json.dumps(disco).encode(),
    b"\x00" + json.dumps(dict(disco, issuer=f"{base}/{{tenantid}}/v2.0", tenant_region_scope=None)).encode(),
    b"\x07" + json.dumps({"issuer": ISS}).encode(),
    b"\x00" + json.dumps(dict(disco, jwks_uri="not a url")).encode(),
    b"\x00[]",
])

ok = {"token_type": "Bearer", "scope": "api://downstream/.default", "expires_in": 3599, "ext_expires_in": 3599, "access_token": rs_token}
write("token_response", [
    b"\x00\xc8" + json.dumps(ok).encode(),
    b"\x00\xc8" + json.dumps(dict(ok, expires_in="3599", refresh_token="1.AXkA", subject_exp=4102444800)).encode(),
    b"\x01\x90" + json.dumps({"error": "interaction_required", "error_description": "AADSTS50079: MFA", "error_codes": [50079], "suberror": "basic_action", "claims": "{\"access_token\":{\"acrs\":{\"essential\":true,\"value\":\"c1\"}}}"}).encode(),
    b"\x01\xf7" + json.dumps({"error": "temporarily_unavailable"}).encode(),
    b"\x01\xf6<html>bad gateway</html>",
    b"\x00\xc8" + json.dumps(dict(ok, access_token="a\nb")).encode(),
])

forms = [
    "identity_provider=entra_id&target=api://x/.default",
    "identity_provider=entra_id&&target=api://x/.default&skip_cache=true&",
    "target=a=b&identity_provider=p&skip_cache",
    "identity_provider=entra%5Fid&target=a+b&user_token=" + rs_token,
    "identity_provider=entra_id&target=x&user_oid=99999999-8888-7777-6666-555555555555",
    "identity_provider=x&target=a&target=b&token=%FF%FE",
]
jsons = [
    json.dumps({"identity_provider": "entra_id", "target": "api://x/.default", "skip_cache": True}),
    json.dumps({"identity_provider": "entra_id", "target": "x", "user_token": rs_token, "token": rs_token, "skip_cache": "1"}),
    json.dumps({"identity_provider": "entra_id", "target": "x", "user_upn": "alice@contoso.example", "resource": None}),
    '{"identity_provider": 5, "token": ["x"]}',
]
write("api_body", [b"\x01" + f.encode() for f in forms] + [b"\x00" + j.encode() for j in jsons] + [b"\x04x=1", b"\x03" + forms[0].encode() + b"\xff"])

write("path", [
    "/", "/api/x", "/public/../needs-role/x", "/public/./../needs-role", "/public/%2e%2E/needs-role/x",
    "/public//..//needs-role", "/%70ublic/%2e%2e/needs-role", "//public/../../needs-role",
    "/NEEDS-ROLE/x", "/public%2F..%2Fneeds-role", "/public/a%5c..%5cneeds-role", "/public/%zz",
    "/public/./y?q=%2e.", "/%70ublic/%7euser/a%c3%a9", "/api/x/..", "/a.b/c..d/.e/..f", "/api;x/..;/admin",
])

reg = "https://app.example/signin-oidc"
write("redirect_uri", [
    f"{reg}\nclient_id=app&redirect_uri={reg}&response_type=code&scope=openid&state=s1&code_challenge=abc&code_challenge_method=S256",
    f"{reg}\nredirect_uri=https%3A%2F%2Fapp.example%2Fsignin-oidc&state=a%26b%3Dc",
    f"{reg}\nredirect_uri={reg}&redirect_uri=https://evil.example/",
    f"http://localhost:3000/cb?x=1#frag\nredirect_uri=http://localhost:3000/cb?x=1%23frag&state=%00",
    f"{reg}\npost_logout_redirect_uri={reg}&id_token_hint={rs_token}&state=x",
    f"{reg}\npost_logout_redirect_uri=https://evil.example/&post_logout_redirect_uri={reg}",
])

write("session_rd", [
    "/", "/app/page?x=1#y", "https://app.example/x", "https://docs.example/a", "//evil.example",
    "/\\evil.example", "https:evil.example", "/%2F%2Fevil.example", "/%252F%252Fevil.example",
    "https://app.example@evil.example/", "\t/x", "/%09/evil.example", "HTTPS://evil.example",
])

with open(os.path.join(ROOT, "config.example.toml")) as f:
    example = f.read()
write("config", [
    example,
    "",
    '[log]\nlevel = "debug"\n',
    '[[providers]]\nname = "entra_id"\nclient_id = "AAAAAAAA-0000-1111-2222-BBBBBBBBBBBB"\n'
    'well_known_url = "https://login.microsoftonline.com/organizations/v2.0/.well-known/openid-configuration"\n'
    'allowed_tenants = ["*"]\n\n[[routes]]\npath = "/api"\nscopes = ["access_as_user"]\n'
    '[routes.obo_headers]\n"x-downstream" = "api://downstream/.default"\n\n[[routes]]\npath = "/"\nauth = "none"\n',
    '[login]\nenabled = true\npublic_url = "https://app.example"\nredirect_uris = ["https://app.example/cb"]\n',
])
