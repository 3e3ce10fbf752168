// Evaluates authorization requests with @cloud-copilot/iam-simulate (tests/iam/check.py
// drives it). Reads a JSON list on stdin, each
//   {"id", "principal", "action", "resource", "accountId", "context": {...},
//    "identityPolicies": [{"name", "policy"}], "resourcePolicy": {...} | null}
// and writes a JSON list of {"id", "decision": "Allowed" | "ExplicitlyDenied" |
// "ImplicitlyDenied" | "Error", "errors": ...} in the same order. Strict mode: every
// context key the request does not carry is absent, as at AWS.
import { runSimulation } from '@cloud-copilot/iam-simulate'

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const requests = JSON.parse(Buffer.concat(chunks).toString('utf8'))
const out = []
for (const r of requests) {
  const simulation = {
    identityPolicies: r.identityPolicies,
    serviceControlPolicies: [],
    resourceControlPolicies: [],
    resourcePolicy: r.resourcePolicy ?? undefined,
    request: {
      principal: r.principal,
      action: r.action,
      resource: { resource: r.resource, accountId: r.accountId },
      contextVariables: r.context,
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
