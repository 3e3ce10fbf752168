"""The local AWS emulator: moto server plus what moto lacks, over the real AWS wire protocol.

The rule: the emulator is never kinder than AWS, and it can fail in every way AWS does.
../server.py is the entry point; ../README.md lists the control endpoints and settings.

# Layout
  patches.py          install(): every patch of moto, with the reason, in one table
  app.py              the WSGI app: one AWS call's way through counts, latency, faults,
                      the AWS lock and moto; the control router
  wire.py             which operation a request is; errors in each service's protocol
  faults.py           the fault-injection control plane: faults, latency, hanging up
  metering.py         calls counted, time each held the emulator (/_emulator/calls, busy)
  quotas.py           AWS's request quotas as token buckets, opt-in (/_emulator/quotas)
  ssm_common.py       SSM's shared errors, validation message, cursor pages, dates
  ssm_activations.py  SSM CreateActivation, DescribeActivations, DeleteActivation
  ssm_tags.py         SSM's tag alphabet (CreateActivation, AddTagsToResource)
  ssm_nodes.py        SSM managed nodes: DescribeInstanceInformation, DeregisterManagedInstance, tags
  node_control.py     /_emulator/register and /_emulator/nodes
  agent_protocol.py   the SSM Agent's own calls (register, role token, check-in, polling)
  parameter_store.py  SSM GetParametersByPath as AWS validates and pages it
  principals.py       who wrote a parameter (LastModifiedUser), /_emulator/principals
  kms_keys.py         AWS-managed KMS keys as AWS describes them
  dynamodb.py         TransactWriteItems: ClientRequestToken, the cost of a commit
  iam_calls.py        what IAM each of the service's calls asks (EMULATOR_IAM_CALLS_DIR)

Importing the package imports nothing of moto (provision.py needs only iam_calls);
the modules that patch or serve do.
"""
