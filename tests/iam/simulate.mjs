// Evaluates authorization requests with @cloud-copilot/iam-simulate (tests/iam/check.py
// drives it). Reads a JSON list on stdin, each
//   {"id", "principal", "action", "resource", "accountId", "context": {...},
//    "identityPolicies": [{"name", "policy"}], "resourcePolicy": {...} | null}
// and writes a JSON list of {"id", "decision": "Allowed" | "ExplicitlyDenied" |
// "ImplicitlyDenied" | "Error", "errors": ...} in the same order. Strict mode: every
// context key the request does not carry is absent, as at AWS.
import { runSimulation } from '@cloud-copilot/iam-simulate'

// iam-simulate (0.1.173) drops a request's context key whose variable part follows a
// colon, as `kms:EncryptionContext:PARAMETER_ARN` does (it recognises only `/`
// variables such as `aws:ResourceTag/K`), so every condition on it reads as absent
// and the key policy's binding to the stack's parameters always denies. The same
// string conditions are evaluated under a `/`-variable name the evaluator accepts
// for KMS actions, in the policies and in the request alike; test_iam_policies.py
// shows the binding still denies a parameter outside the stack's prefix.
const ENCRYPTION_CONTEXT = /^kms:EncryptionContext:(.+)$/i
const alias = (key) => key.replace(ENCRYPTION_CONTEXT, 'aws:ResourceTag/kms-encryption-context-$1')

function aliasKeys(object) {
  return Object.fromEntries(Object.entries(object ?? {}).map(([k, v]) => [alias(k), v]))
}

function aliasConditions(policy) {
  if (!policy) return policy
  const copy = structuredClone(policy)
  const statements = Array.isArray(copy.Statement) ? copy.Statement : [copy.Statement]
  for (const statement of statements) {
    if (!statement?.Condition) continue
    for (const operator of Object.keys(statement.Condition)) {
      statement.Condition[operator] = aliasKeys(statement.Condition[operator])
    }
  }
  return copy
}

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const requests = JSON.parse(Buffer.concat(chunks).toString('utf8'))
const out = []
for (const r of requests) {
  const simulation = {
    identityPolicies: r.identityPolicies.map((p) => ({ ...p, policy: aliasConditions(p.policy) })),
    serviceControlPolicies: [],
    resourceControlPolicies: [],
    resourcePolicy: aliasConditions(r.resourcePolicy) ?? undefined,
    request: {
      principal: r.principal,
      action: r.action,
      resource: { resource: r.resource, accountId: r.accountId },
      contextVariables: aliasKeys(r.context),
    },
  }
  try {
    const result = await runSimulation(simulation, { simulationMode: 'Strict' })
    if (result.resultType === 'error') {
      out.push({ id: r.id, decision: 'Error', errors: result.errors })
    } else {
      out.push({ id: r.id, decision: result.overallResult })
    }
  } catch (err) {
    out.push({ id: r.id, decision: 'Error', errors: String(err?.stack ?? err) })
  }
}
process.stdout.write(JSON.stringify(out))
