"""Parameters of ``planner_node``; ``config/planner.yaml`` holds the same defaults (a test checks it)."""

from __future__ import annotations

from lewm_ros.action_safety import SAFE_ACTIONS
from lewm_ros.nodes.action_messages import ACTION_TYPES
from lewm_ros.nodes.parameter_specs import ParamSpec

SOLVERS = ('cem', 'icem', 'mppi', 'controller')  # = lewm_ros.planning.config.SOLVERS (that imports torch)
PROPOSALS = ('none', 'controller')  # = lewm_ros.planning.config.PROPOSALS
PRESETS = ('paper', 'recommended', 'controller', 'hybrid')  # = lewm_ros.planning.settings.PRESETS
# node parameter -> PlannerConfig field, and the value that means "not set: the checkpoint's"
PLANNER_SETTING_PARAMS = {
    'solver': ('solver', ''), 'proposal': ('proposal', ''), 'controller_ahead': ('controller_ahead', 0),
    'samples': ('samples', 0), 'iterations': ('iterations', 0),
    'elites': ('elites', 0), 'icem_white_fraction': ('icem_white_fraction', -1.0),
    'goal_cost': ('goal_cost', ''), 'goal_metric': ('goal_metric', ''), 'horizon': ('horizon', 0),
    'replan_every': ('receding_horizon', 0),
}
CAMERA_TRANSPORTS = ('raw', 'compressed')
CAMERA_QOS = ('auto', 'sensor_data', 'reliable')

PLANNER_PARAMS = (
    ParamSpec('checkpoint', '', 'LeWM checkpoint directory written by `lewm train` (required)'),
    ParamSpec('device', 'auto', 'torch device for the model: auto picks cuda, then mps, then cpu',
              choices=('auto', 'cpu', 'cuda', 'mps')),
    ParamSpec('camera_topic', 'camera/image_raw', 'camera input (sensor_msgs/Image; with camera_transport '
              'compressed, sensor_msgs/CompressedImage on <camera_topic>/compressed)'),
    ParamSpec('camera_transport', 'raw', 'raw: sensor_msgs/Image; compressed: sensor_msgs/CompressedImage '
              '(jpeg or png) on <camera_topic>/compressed, as image_transport publishes it',
              choices=CAMERA_TRANSPORTS),
    ParamSpec('camera_qos', 'auto', 'camera subscription reliability. sensor_data: best effort (drops late '
              'frames; large frames from a reliable publisher can be lost whole); reliable; auto: match the '
              'publishers (reliable when all of them are, checked at start and whenever frames stop '
              'arriving)', choices=CAMERA_QOS),
    ParamSpec('goal_topic', 'lewm/goal_image', 'goal image input (sensor_msgs/Image, reliable + transient '
              'local, depth 1)'),
    ParamSpec('action_topic', 'lewm/action', 'next action output, env units'),
    ParamSpec('action_type', 'float64_multi_array', 'message type of the action output',
              choices=ACTION_TYPES),
    ParamSpec('plan_topic', 'lewm/plan', 'whole planned action sequence (std_msgs/Float64MultiArray, '
              'layout horizon x frameskip x action_dim) for debugging'),
    ParamSpec('surprise_topic', 'lewm/surprise',
              'surprise of each new frame (diagnostic_msgs/DiagnosticArray)'),
    ParamSpec('surprise_score_topic', '', "bare surprise score (std_msgs/Float32); '' = "
              '<surprise_topic>/score'),
    ParamSpec('diagnostics_topic', '/diagnostics', 'node health (diagnostic_msgs/DiagnosticArray, 1 Hz): '
              'tick rate, missed ticks, plan time, frame age, dropped frames by reason'),
    ParamSpec('frame_id', 'base_link', 'frame_id of TwistStamped actions'),
    ParamSpec('control_rate_hz', 10.0, 'control timer rate: one action per tick; the model step is '
              'frameskip ticks', low=0.1, high=1000.0),
    ParamSpec('frame_driven', False, 'act only on ticks that bring a new camera frame, one action per frame '
              '(for lock-step simulators, where the next frame answers the last action); false: one action '
              'per tick whatever the camera does', read_only=False),
    # Planner settings: unset (''/0/-1, the defaults) = the checkpoint's stored settings (`lewm tune`),
    # else our recommended ones (lewm_ros/planning/settings.py); the start-up log says which is which.
    ParamSpec('planner_preset', '', "named planner settings instead of the checkpoint's: paper = the "
              "reference CEM (300 x 30, final goal cost, euclidean, whole plan executed); recommended = "
              "our defaults; controller / hybrid: the checkpoint's controller alone / refined by iCEM; "
              "'' = the checkpoint's. Single parameters below override it",
              choices=('', *PRESETS)),
    ParamSpec('solver', '', "sampling-based planner in latent space, or controller: the checkpoint's "
              "goal-conditioned controller, one forward pass per plan; '' = the checkpoint's",
              choices=('', *SOLVERS)),
    ParamSpec('proposal', '', "controller: a sampling solver starts from the controller's plan and never "
              "returns a costlier one (the hybrid); none: from the last plan; '' = the checkpoint's",
              read_only=False, choices=('', *PROPOSALS)),
    ParamSpec('controller_ahead', 0, "blocks to the goal the controller is told (small: decisive); 0 = the "
              "checkpoint's", read_only=False, low=0, high=1000),
    ParamSpec('samples', 0, "candidate action sequences per iteration; 0 = the checkpoint's",
              read_only=False, low=0, high=100000),
    ParamSpec('iterations', 0, "solver iterations per plan; 0 = the checkpoint's", read_only=False,
              low=0, high=1000),
    ParamSpec('elites', 0, "elite candidates refitted per iteration (<= samples); 0 = the checkpoint's",
              read_only=False, low=0, high=100000),
    ParamSpec('icem_white_fraction', -1.0, 'icem only: share of samples drawn with white instead of '
              "coloured noise (0 = the paper's iCEM); < 0 = the checkpoint's", read_only=False,
              low=-1.0, high=1.0),
    ParamSpec('goal_cost', '', "distance to the goal embedding of the plan's final prediction (the paper), "
              "or its mean over every predicted block; '' = the checkpoint's", read_only=False,
              choices=('', 'final', 'mean')),
    ParamSpec('goal_metric', '', 'goal distance: plain squared distance (the paper), or whitened by the '
              "step covariance `lewm calibrate` stores in the checkpoint; '' = the checkpoint's",
              read_only=False, choices=('', 'euclidean', 'whitened')),
    ParamSpec('horizon', 0, "planning horizon in action blocks (one block = frameskip ticks); 0 = the "
              "checkpoint's", low=0, high=100),
    ParamSpec('replan_every', 0, "blocks executed before re-planning (receding horizon); 0 = the "
              "checkpoint's", read_only=False, low=0, high=100),
    ParamSpec('action_low', [], "lower action bounds in env units, one per action dim; [] = the "
              "checkpoint's bounds (tighter bounds only: planning never leaves the trained range). Updated "
              'at run time only if the pair stays non-empty', read_only=False, array_of=float),
    ParamSpec('action_high', [], 'upper action bounds in env units; see action_low', read_only=False,
              array_of=float),
    ParamSpec('allow_unbounded_actions', False, 'a checkpoint that records no action bounds is refused '
              'unless action_low/action_high are given, or this is true (then actions are only checked '
              'to be finite)'),
    ParamSpec('max_plan_time', 0.0, 'seconds one plan may take; 0 = auto: 80 % of a control period '
              '(frame_driven: 2 s, the world waits). Samples and iterations are capped at start to fit, '
              'from a measurement of this machine, and no solver iteration starts past it', read_only=False,
              low=0.0, high=600.0),
    ParamSpec('stale_timeout', 0.5, 'seconds without a camera frame before the safe action is sent',
              read_only=False, low=0.0, high=3600.0),
    ParamSpec('safe_action', 'zero', 'what to send when the camera is stale, the goal is cleared, a plan '
              'fails, or the node stops: zero, or hold the last action (always clipped to the bounds)',
              read_only=False, choices=SAFE_ACTIONS),
    ParamSpec('surprise_threshold', -1.0, "flag frames whose surprise exceeds this; < 0 = the checkpoint's "
              'calibrated threshold (`lewm calibrate`)', read_only=False, low=-1.0, high=1e9),
    ParamSpec('threads', 0, 'CPU threads for planning; 0 = one for small models (tiny), all cores for '
              'larger ones', low=0, high=1024),
    ParamSpec('seed', 0, 'seed of the planner\'s random number generator', low=0, high=2**31 - 1),
)
